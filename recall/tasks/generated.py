"""A small offline task suite, generated deterministically from a seed.

Five tasks mirror the five formats of the paper's datasets and are written with the same hub field
names, so the same loaders read them:

- gen_sentiment   (like SST-2)     short reviews; a "but" clause or "not" decides the label
- gen_squad       (like SQuAD 2.0) facts about a fictional town; about a third of the questions ask
                                   for a fact the passage leaves out -> "impossible to answer"
- gen_knowledge   (like MedMCQA)   4-option questions over a fixed table of world facts; train and
                                   test ask the same facts with fresh distractors and option order,
                                   so test accuracy measures whether the knowledge was learned (or forgotten)
- gen_reading     (like RACE)      4-option questions on a short story that mentions a decoy value
- gen_translation (like IWSLT)     English -> French sentences from a small grammar
                                   (gender, elision, adjective position, negation)

Each is learnable by a ~135M model in a few hundred LoRA steps, and their answers have distinct
forms (label word, span, letter, letter, French sentence), so learning one can hurt another.
Train and test never share a prompt.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from recall.atomic import atomic_dir, atomic_file, write_json
from recall.errors import RecallError
from recall.tasks.registry import get_task

Row = dict
Generator = Callable[[random.Random, int], Row]

# ---------------------------------------------------------------- sentiment
SUBJECTS = (
    "the movie",
    "the film",
    "the plot",
    "the acting",
    "the soundtrack",
    "the ending",
    "the story",
    "the cast",
    "the dialogue",
    "this sequel",
    "the script",
    "the camera work",
    "the pacing",
    "the humor",
)
POSITIVE = (
    "wonderful",
    "brilliant",
    "charming",
    "delightful",
    "moving",
    "gripping",
    "clever",
    "beautiful",
    "funny",
    "touching",
    "superb",
    "engaging",
    "fresh",
    "heartfelt",
    "stunning",
)
NEGATIVE = (
    "boring",
    "dull",
    "clumsy",
    "tedious",
    "awful",
    "predictable",
    "lifeless",
    "messy",
    "shallow",
    "bland",
    "painful",
    "forgettable",
    "confusing",
    "flat",
    "weak",
)


def sentiment_row(rng: random.Random, idx: int) -> Row:
    label = rng.randrange(2)
    words = (NEGATIVE, POSITIVE)
    subject, other = rng.sample(SUBJECTS, 2)
    form = rng.randrange(4)
    if form == 0:  # one clear adjective
        sentence = f"{subject} was {rng.choice(words[label])} ."
    elif form == 1:  # two adjectives agreeing
        a, b = rng.sample(words[label], 2)
        sentence = f"{subject} is {a} and {b} ."
    elif form == 2:  # negation flips the adjective
        sentence = f"{subject} was not {rng.choice(words[1 - label])} at all ."
    else:  # the clause after "but" decides
        sentence = f"{subject} was {rng.choice(words[1 - label])} , but {other} was {rng.choice(words[label])} ."
    return {"idx": idx, "sentence": sentence, "label": label}


# ---------------------------------------------------------------- extractive QA
SYLLABLES = ("vel", "mor", "ka", "dun", "ris", "tal", "bro", "en", "sha", "lin", "gor", "ath", "qui", "ne")
REGIONS = ("north", "south", "east", "west", "center")
COUNTRIES = ("Almeria", "Brevonia", "Castora", "Delmark", "Eskaria", "Fenwold")
FIRST_NAMES = ("Anna", "Boris", "Clara", "David", "Elena", "Felix", "Greta", "Hugo", "Ines", "Jonas")
LAST_NAMES = ("Brandt", "Costa", "Duval", "Eriksen", "Falk", "Novak", "Moreau", "Lindqvist", "Petrov")
PROFESSIONS = ("miller", "blacksmith", "merchant", "fisherman", "priest", "carpenter", "weaver", "soldier")
SPECIALTIES = (
    "glass bridges",
    "cheese market",
    "old clock tower",
    "summer music festival",
    "salt mines",
    "painted boats",
    "apple orchards",
    "stone library",
)
# fact -> (sentence template, question template); every answer is a span of its sentence.
TOWN_FACTS = {
    "country": ("{town} is a small town in the {region} of {country}.", "In which country is {town}?"),
    "year": ("It was founded in {year}.", "When was {town} founded?"),
    "founder": ("Its founder was {founder}, a {profession}.", "Who founded {town}?"),
    "specialty": ("Today the town is famous for its {specialty}.", "What is {town} famous for?"),
    "population": ("About {population} people live there.", "How many people live in {town}?"),
}
ABSENT_QUESTIONS = (  # never answered by any passage
    "Who is the mayor of {town}?",
    "Which river flows through {town}?",
    "What is the main sport played in {town}?",
    "When did {town} get its first railway?",
)


def town_name(rng: random.Random) -> str:
    return "".join(rng.sample(SYLLABLES, rng.choice((2, 3)))).capitalize()


def squad_row(rng: random.Random, idx: int) -> Row:
    town = town_name(rng)
    values = {
        "town": town,
        "region": rng.choice(REGIONS),
        "country": rng.choice(COUNTRIES),
        "year": str(rng.randrange(1200, 1900)),
        "founder": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
        "profession": rng.choice(PROFESSIONS),
        "specialty": rng.choice(SPECIALTIES),
        "population": f"{rng.randrange(2, 90) * 100:,}",
    }
    # "country" opens the passage; the other facts are each left out with probability 1/4.
    included = ["country"] + [f for f in TOWN_FACTS if f != "country" and rng.random() < 0.75]
    sentences = {f: TOWN_FACTS[f][0].format(**values) for f in included}
    context = " ".join(sentences.values())
    kind = rng.random()
    answers = []
    if kind < 0.66:  # a fact of the passage's town: answerable iff the passage states it
        fact = rng.choice(list(TOWN_FACTS))
        question = TOWN_FACTS[fact][1].format(**values)
        if fact in included:  # locate the span inside its own sentence ("800" may also be in "1800")
            start = context.index(sentences[fact]) + sentences[fact].index(values[fact])
            answers = [{"text": values[fact], "answer_start": start}]
    elif kind < 0.83:  # a fact the passage could never give
        question = rng.choice(ABSENT_QUESTIONS).format(town=town)
    else:  # a stated kind of fact, but about another town
        fact, other = rng.choice(included), town_name(rng)
        while other == town:
            other = town_name(rng)
        question = TOWN_FACTS[fact][1].format(town=other)
    return {
        "id": f"gen-squad-{idx}",
        "title": town,
        "context": context,
        "question": question,
        "answers": answers,
        "is_impossible": not answers,
    }


# ---------------------------------------------------------------- knowledge MCQ
# category -> (question template, {subject: answer}); distractors are other answers of the category.
FACTS = {
    "capital": (
        "What is the capital of {}?",
        {
            "France": "Paris",
            "Germany": "Berlin",
            "Italy": "Rome",
            "Spain": "Madrid",
            "Japan": "Tokyo",
            "Egypt": "Cairo",
            "Canada": "Ottawa",
            "Australia": "Canberra",
            "Russia": "Moscow",
            "China": "Beijing",
            "India": "New Delhi",
            "Kenya": "Nairobi",
            "Peru": "Lima",
            "Norway": "Oslo",
            "Sweden": "Stockholm",
            "Greece": "Athens",
            "Portugal": "Lisbon",
            "Turkey": "Ankara",
            "Poland": "Warsaw",
            "Ireland": "Dublin",
            "Thailand": "Bangkok",
            "Argentina": "Buenos Aires",
        },
    ),
    "symbol": (
        "What is the chemical symbol of {}?",
        {
            "gold": "Au",
            "silver": "Ag",
            "iron": "Fe",
            "sodium": "Na",
            "helium": "He",
            "copper": "Cu",
            "lead": "Pb",
            "tin": "Sn",
            "calcium": "Ca",
            "zinc": "Zn",
            "mercury": "Hg",
            "neon": "Ne",
        },
    ),
    "animal": (
        "What kind of animal is a {}?",
        {
            "whale": "mammal",
            "dolphin": "mammal",
            "bat": "mammal",
            "eagle": "bird",
            "penguin": "bird",
            "ostrich": "bird",
            "crocodile": "reptile",
            "snake": "reptile",
            "turtle": "reptile",
            "shark": "fish",
            "salmon": "fish",
            "frog": "amphibian",
            "salamander": "amphibian",
            "ant": "insect",
            "bee": "insect",
            "butterfly": "insect",
        },
    ),
    "organ": (
        "Which organ {}?",
        {
            "pumps blood through the body": "heart",
            "filters the blood to make urine": "kidney",
            "takes oxygen from the air": "lung",
            "produces insulin": "pancreas",
            "stores bile": "gallbladder",
            "breaks down alcohol": "liver",
            "controls thought": "brain",
            "absorbs most nutrients from food": "small intestine",
        },
    ),
    "vitamin": (
        "Deficiency of which vitamin causes {}?",
        {
            "scurvy": "vitamin C",
            "rickets": "vitamin D",
            "night blindness": "vitamin A",
            "beriberi": "vitamin B1",
            "pernicious anemia": "vitamin B12",
            "bleeding from poor clotting": "vitamin K",
        },
    ),
    "author": (
        "Who wrote {}?",
        {
            "Hamlet": "William Shakespeare",
            "Pride and Prejudice": "Jane Austen",
            "War and Peace": "Leo Tolstoy",
            "Don Quixote": "Miguel de Cervantes",
            "Les Miserables": "Victor Hugo",
            "1984": "George Orwell",
            "Oliver Twist": "Charles Dickens",
            "The Divine Comedy": "Dante Alighieri",
            "The Odyssey": "Homer",
        },
    ),
    "unit": (
        "What is the SI unit of {}?",
        {
            "force": "newton",
            "energy": "joule",
            "power": "watt",
            "electric current": "ampere",
            "temperature": "kelvin",
            "pressure": "pascal",
            "frequency": "hertz",
            "electric charge": "coulomb",
            "electrical resistance": "ohm",
            "mass": "kilogram",
        },
    ),
}


def mcq_options(rng: random.Random, answer: str, pool: list[str]) -> tuple[list[str], int]:
    """`answer` plus 3 distinct distractors from `pool`, shuffled; returns (options, answer index)."""
    distractors = rng.sample(sorted({p for p in pool if p != answer}), 3)
    options = [answer, *distractors]
    rng.shuffle(options)
    return options, options.index(answer)


def knowledge_row(rng: random.Random, idx: int) -> Row:
    template, table = FACTS[rng.choice(sorted(FACTS))]
    subject = rng.choice(sorted(table))
    options, cop = mcq_options(rng, table[subject], list(table.values()))
    return {
        "id": f"gen-knowledge-{idx}",
        "question": template.format(subject),
        **dict(zip(("opa", "opb", "opc", "opd"), options)),
        "cop": cop,
    }


# ---------------------------------------------------------------- reading MCQ
PEOPLE = ("Mia", "Tom", "Lena", "Omar", "Sara", "Ben", "Yuki", "Leo", "Nina", "Paul")
COMPANIONS = ("a classmate", "a cousin", "an old friend", "the neighbor", "the teacher", "a younger sister")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
PLACES = ("the lake", "the market", "the museum", "the zoo", "the beach", "the library", "the park", "the castle")
TRANSPORT = ("by bus", "by bike", "on foot", "by train", "by car", "by boat")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "orange", "purple")
ITEMS = ("bag", "hat", "kite", "umbrella", "scarf", "basket")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine")
ANIMALS = ("ducks", "goats", "rabbits", "swans", "horses", "squirrels")
FOODS = ("apples", "sandwiches", "soup", "pancakes", "noodles", "cherries", "rice", "cookies")
# slot -> (question template, pool of values); the story mentions a decoy value of one slot.
READING_QUESTIONS = {
    "place": ("Where did {name} go on {day}?", PLACES),
    "transport": ("How did {name} travel that day?", TRANSPORT),
    "companion": ("Who went with {name}?", COMPANIONS),
    "color": ("What color was {name}'s {item}?", COLORS),
    "number": ("How many {animals} did they see?", NUMBERS),
    "food": ("What did they eat there?", FOODS),
    "day": ("On which day did {name} go to {place}?", DAYS),
}
DECOYS = {
    "place": "Next week {name} wants to visit {decoy}.",
    "transport": "Usually {name} goes to school {decoy}.",
    "companion": "{name} had asked {decoy} to come too, but the answer was no.",
    "color": "The {item} that {name} lost last year was {decoy}.",
    "number": "Last summer they had seen only {decoy} of them.",
    "food": "{name} does not like {decoy} at all.",
    "day": "The trip had first been planned for {decoy}.",
}


def reading_row(rng: random.Random, idx: int) -> Row:
    v = {slot: rng.choice(pool) for slot, (_, pool) in READING_QUESTIONS.items()}
    v.update(name=rng.choice(PEOPLE), item=rng.choice(ITEMS), animals=rng.choice(ANIMALS))
    decoy_slot = rng.choice(sorted(DECOYS))
    v["decoy"] = rng.choice([x for x in READING_QUESTIONS[decoy_slot][1] if x != v[decoy_slot]])
    story = [
        "On {day}, {name} went to {place} {transport} with {companion}.",
        "{name} carried a {color} {item}.",
        "There they saw {number} {animals} and ate {food}.",
        DECOYS[decoy_slot],
        "They came home tired but happy.",
    ]
    story.insert(rng.randrange(1, len(story)), story.pop(story.index(DECOYS[decoy_slot])))
    slot = rng.choice(sorted(READING_QUESTIONS))
    template, pool = READING_QUESTIONS[slot]
    # the decoy, when it belongs to the asked slot, is always among the wrong options
    pool = [x for x in pool if x != v["decoy"]]
    options, answer = mcq_options(rng, v[slot], pool)
    if decoy_slot == slot:
        options[next(i for i in range(4) if i != answer)] = v["decoy"]
    return {
        "example_id": f"gen-reading-{idx}",
        "article": " ".join(story).format(**v),
        "question": template.format(**v),
        "options": options,
        "answer": "ABCD"[answer],
    }


# ---------------------------------------------------------------- translation
# English noun -> (French noun, gender); vowel-initial French nouns take "l'".
NOUNS = {
    "cat": ("chat", "m"),
    "dog": ("chien", "m"),
    "bird": ("oiseau", "m"),
    "horse": ("cheval", "m"),
    "girl": ("fille", "f"),
    "boy": ("garçon", "m"),
    "woman": ("femme", "f"),
    "man": ("homme", "m"),
    "child": ("enfant", "m"),
    "teacher": ("professeur", "m"),
    "mouse": ("souris", "f"),
}
OBJECTS = {
    "apple": ("pomme", "f"),
    "bread": ("pain", "m"),
    "cake": ("gâteau", "m"),
    "book": ("livre", "m"),
    "letter": ("lettre", "f"),
    "car": ("voiture", "f"),
    "house": ("maison", "f"),
    "ball": ("balle", "f"),
    "flower": ("fleur", "f"),
    "door": ("porte", "f"),
    "window": ("fenêtre", "f"),
    "key": ("clé", "f"),
    "hat": ("chapeau", "m"),
    "umbrella": ("parapluie", "m"),
    "orange": ("orange", "f"),
}
# English verb (3rd person, base form) -> (French 3rd person), objects it takes
VERBS = {
    ("sees", "see"): ("voit", tuple(OBJECTS)),
    ("likes", "like"): ("aime", tuple(OBJECTS)),
    ("wants", "want"): ("veut", tuple(OBJECTS)),
    ("finds", "find"): ("trouve", tuple(OBJECTS)),
    ("eats", "eat"): ("mange", ("apple", "bread", "cake", "orange")),
    ("reads", "read"): ("lit", ("book", "letter")),
    ("opens", "open"): ("ouvre", ("door", "window", "letter", "book", "umbrella")),
    ("buys", "buy"): ("achète", ("apple", "bread", "cake", "book", "car", "house", "ball", "flower", "hat")),
    ("carries", "carry"): ("porte", ("book", "letter", "ball", "flower", "key", "hat", "umbrella", "apple")),
    ("draws", "draw"): ("dessine", tuple(OBJECTS)),
}
# English adjective -> (masculine, feminine, goes before the noun)
ADJECTIVES = {
    "small": ("petit", "petite", True),
    "big": ("grand", "grande", True),
    "pretty": ("joli", "jolie", True),
    "red": ("rouge", "rouge", False),
    "blue": ("bleu", "bleue", False),
    "green": ("vert", "verte", False),
    "black": ("noir", "noire", False),
    "white": ("blanc", "blanche", False),
}
ADVERBS = {"": "", "every day": "tous les jours", "today": "aujourd'hui", "in the morning": "le matin"}
VOWELS = tuple("aeiouhéâ")


def french_phrase(noun: str, gender: str, adjective: str | None) -> str:
    """Definite noun phrase with agreement, elision and adjective position."""
    if adjective:
        masc, fem, before = ADJECTIVES[adjective]
        adj = masc if gender == "m" else fem
        words = [adj, noun] if before else [noun, adj]
    else:
        words = [noun]
    article = "l'" if words[0].startswith(VOWELS) else ("le " if gender == "m" else "la ")
    return article + " ".join(words)


def translation_row(rng: random.Random, idx: int) -> Row:
    subject = rng.choice(sorted(NOUNS))
    (en_verb, en_base), (fr_verb, objects) = rng.choice(sorted(VERBS.items()))
    obj = rng.choice(objects)
    subj_adj, obj_adj = (rng.choice([None, *sorted(ADJECTIVES)]) for _ in range(2))
    adverb = rng.choice(sorted(ADVERBS))
    negated = rng.random() < 0.2

    en_subj = " ".join(w for w in ("the", subj_adj, subject) if w)
    en_obj = " ".join(w for w in ("the", obj_adj, obj) if w)
    en_vp = f"does not {en_base}" if negated else en_verb
    fr_vp = (f"n'{fr_verb}" if fr_verb.startswith(VOWELS) else f"ne {fr_verb}") + " pas" if negated else fr_verb
    en = " ".join(w for w in (en_subj, en_vp, en_obj, adverb) if w) + "."
    fr = (
        " ".join(
            w
            for w in (
                french_phrase(*NOUNS[subject], subj_adj),
                fr_vp,
                french_phrase(*OBJECTS[obj], obj_adj),
                ADVERBS[adverb],
            )
            if w
        )
        + "."
    )
    return {"id": f"gen-translation-{idx}", "translation": {"en": en.capitalize(), "fr": fr[0].upper() + fr[1:]}}


# ---------------------------------------------------------------- the suite
GENERATORS: dict[str, Generator] = {
    "gen_sentiment": sentiment_row,
    "gen_squad": squad_row,
    "gen_knowledge": knowledge_row,
    "gen_reading": reading_row,
    "gen_translation": translation_row,
}
DEFAULT_TRAIN = 500
DEFAULT_TEST = 100


def generate_rows(name: str, seed: int, sizes: dict[str, int]) -> dict[str, list[Row]]:
    """Rows of each split of task `name`, unique by prompt across all splits."""
    task, generator = get_task(name), GENERATORS[name]
    rng = random.Random(f"{seed}:{name}")  # str seeds hash with sha512: stable across runs and platforms
    seen: set[str] = set()
    splits: dict[str, list[Row]] = {}
    for split, size in sizes.items():
        rows: list[Row] = []
        for _ in range(100 * size + 1000):  # bounded: a tiny sample space must not loop forever
            if len(rows) == size:
                break
            row = generator(rng, len(seen))
            prompt = task.example(row).prompt  # also checks the row reads back through the loader
            if prompt not in seen:
                seen.add(prompt)
                rows.append(row)
        else:
            raise RecallError(f"could not generate {size} distinct {split} examples for {name}; ask for fewer")
        splits[split] = rows
    return splits


def generate_suite(
    out: str | Path, seed: int = 0, train: int = DEFAULT_TRAIN, test: int = DEFAULT_TEST
) -> dict[str, Path]:
    """Write `out/<task>/{train,test}.jsonl` for every generated task (each folder atomically) and
    `out/suite.json` describing the run. Returns task name -> folder."""
    if train < 1 or test < 1:
        raise RecallError(f"--train and --test must be positive, got {train} and {test}")
    out = Path(out)
    folders = {}
    for name in GENERATORS:
        splits = generate_rows(name, seed, {"train": train, "test": test})
        with atomic_dir(out / name) as tmp:
            for split, rows in splits.items():
                with atomic_file(tmp / f"{split}.jsonl") as fh:
                    fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        folders[name] = out / name
    write_json(
        out / "suite.json",
        {"generator": __name__, "seed": seed, "train": train, "test": test, "tasks": list(GENERATORS)},
    )
    return folders
