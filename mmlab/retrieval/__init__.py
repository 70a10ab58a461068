"""Cross-modal retrieval: dual encoders over cached features, contrastive training, baselines,
the search index and the searchable MLflow model.

    data = pairs.pair_data(ds, "image-text")
    result = train.train_retrieval(data, train.TrainConfig(epochs=12))
    train.evaluate(result.model, data.splits["test"])   # text_to_image_recall_at_1, ...
"""
