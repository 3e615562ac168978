"""Where merge weights come from: representations (RECALL: features, typical samples, similarity),
losses (LM-Cocktail) and Fisher information; rows turns them into per-layer weight rows."""
