"""The SDK: what user code touches. Importing it must stay light (containers import it)."""

from ember.sdk.app import App, DeployResult, LocalEntrypoint
from ember.sdk.function import Function, FunctionCall
from ember.sdk.image import Image
from ember.sdk.output import enable_output
from ember.sdk.retries import Retries

__all__ = [
    "App",
    "DeployResult",
    "Function",
    "FunctionCall",
    "Image",
    "LocalEntrypoint",
    "Retries",
    "enable_output",
]
