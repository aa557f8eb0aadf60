"""Models: one file per architecture, all reachable through the registry."""

from spatiotemporal.models.registry import (
    ModelSpec,
    Preprocess,
    TestProtocol,
    count_parameters,
    create_model,
    get_spec,
    list_models,
    register_model,
)

__all__ = [
    "ModelSpec",
    "Preprocess",
    "TestProtocol",
    "count_parameters",
    "create_model",
    "get_spec",
    "list_models",
    "register_model",
]
