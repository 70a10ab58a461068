"""Cross-modal retrieval: dual encoders over cached features, contrastive training, baselines,
the search index and the searchable MLflow model."""
