"""retrieval: Qdrant store, search, evaluation metrics and the THI dialogue engine."""
