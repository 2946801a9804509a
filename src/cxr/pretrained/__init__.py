"""Published and foundation models: sources with their authors' preprocessing, embeddings on disk."""
