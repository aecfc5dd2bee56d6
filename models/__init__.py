"""MangaAssist models: datasets, training, evaluation, ONNX export and the model registry."""

INTENT_LABELS: tuple[str, ...] = (
    "recommendation",
    "product_search",
    "product_question",
    "price_availability",
    "order_status",
    "shipping",
    "returns_refunds",
    "chitchat",
)
