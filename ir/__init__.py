"""lcpaq's graph IR: capture to torch.fx, the quantizable-layer view, annotation keys,
and the quantizer arithmetic shared by passes and backends."""
from lcpaq.ir.capture import capture
from lcpaq.ir.errors import CaptureError, ConfigError, CorruptFileError, LcpaqError, PassContractError
from lcpaq.ir.layers import QuantLayer, find_layers, layer_map, precision_groups, scale_groups
from lcpaq.ir.precision import LayerQuantSpec, QuantScheme, QuantSpec

__all__ = [
    "CaptureError", "ConfigError", "CorruptFileError", "LcpaqError", "PassContractError",
    "LayerQuantSpec", "QuantLayer", "QuantScheme", "QuantSpec", "capture", "find_layers", "layer_map", "precision_groups", "scale_groups",
]
