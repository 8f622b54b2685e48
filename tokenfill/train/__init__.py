"""Training the bundled model: the corpus, its training data, the recipe, the corpus n-gram table."""
