"""Type stubs for the native module (the public API lives in layernorm/__init__.py)."""

from typing import Optional, Sequence, Tuple

import numpy as np

__version__: str

class LayerNormError(ValueError): ...
class ShapeError(LayerNormError): ...
class EpsilonError(LayerNormError): ...
class EmptyError(LayerNormError): ...
class AxisError(LayerNormError): ...
class SizeOverflowError(LayerNormError): ...
class OutputError(LayerNormError): ...
class MomentumError(LayerNormError): ...
class RunningStatsError(LayerNormError): ...
class DTypeError(TypeError): ...

def layer_norm_forward(
    x: np.ndarray,
    normalized_shape: Sequence[int],
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    out: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def layer_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    normalized_shape: Sequence[int],
    weight: Optional[np.ndarray] = None,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
    grad_sum: Optional[np.ndarray] = None,
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
def rms_norm_forward(
    x: np.ndarray,
    normalized_shape: Sequence[int],
    weight: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    out: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, np.ndarray]: ...
def rms_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    rstd: np.ndarray,
    normalized_shape: Sequence[int],
    weight: Optional[np.ndarray] = None,
    output_mask: Tuple[bool, bool] = (True, True),
    grad_sum: Optional[np.ndarray] = None,
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]: ...
def add_norm_forward(
    x: np.ndarray,
    residual: np.ndarray,
    normalized_shape: Sequence[int],
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    rms: bool = False,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def layer_norm_axes_forward(
    x: np.ndarray,
    axes: Sequence[int],
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def layer_norm_axes_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    axes: Sequence[int],
    weight: Optional[np.ndarray] = None,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
def batch_norm_forward(
    x: np.ndarray,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    channel_axis: int = 1,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def batch_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: Optional[np.ndarray] = None,
    rstd: Optional[np.ndarray] = None,
    weight: Optional[np.ndarray] = None,
    running_mean: Optional[np.ndarray] = None,
    running_var: Optional[np.ndarray] = None,
    training: bool = True,
    eps: float = 1e-5,
    channel_axis: int = 1,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
def group_norm_forward(
    x: np.ndarray,
    groups: Optional[int] = None,
    weight: Optional[np.ndarray] = None,
    bias: Optional[np.ndarray] = None,
    eps: float = 1e-5,
    channel_axis: int = 1,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def group_norm_backward(
    grad_out: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    groups: Optional[int] = None,
    weight: Optional[np.ndarray] = None,
    channel_axis: int = 1,
    output_mask: Tuple[bool, bool, bool] = (True, True, True),
) -> Tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]: ...
def after_fork_in_child() -> None: ...
def cpu_info() -> Tuple[str, list[str]]: ...
