"""
Which floating-point type the target critic's pass over the sampled actions computes in (``target_precision``).

``"auto"`` picks bfloat16 where the hardware multiplies bfloat16 matrices natively, and float32 elsewhere: on a CPU,
AMX or AVX512-BF16 (without them bfloat16 products are emulated and can be slower than float32 ones); on a CUDA GPU,
compute capability 8.0 or above (Ampere and later, whose tensor cores take bfloat16). Any other device keeps float32.
"""

from typing import Literal

import torch as th

TargetPrecision = Literal["float32", "bfloat16", "auto"]

#: The first CUDA compute capability whose tensor cores multiply bfloat16 matrices (Ampere)
CUDA_BFLOAT16_CAPABILITY = (8, 0)


#: Whether a device multiplies bfloat16 matrices natively, by ``str(device)``: filled at a device's first query, so
#: that a compiled update (which cannot trace torch's hardware queries) only reads it
_NATIVE_BFLOAT16: dict[str, bool] = {}


def _detect_bfloat16_units(device: th.device) -> bool:
    if device.type == "cpu":  # AMX tiles or AVX512-BF16, as torch detects them; False where this build cannot tell
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(th.cpu, name, lambda: False)()) for name in checks)
    if device.type == "cuda":
        return th.cuda.get_device_capability(device) >= CUDA_BFLOAT16_CAPABILITY
    return False


def has_bfloat16_units(device: th.device) -> bool:
    """
    :param device: Where the networks live
    :return: Whether bfloat16 matrix products run natively there (see the module's docstring)
    """
    key = str(device)
    if key not in _NATIVE_BFLOAT16:
        _NATIVE_BFLOAT16[key] = _detect_bfloat16_units(device)
    return _NATIVE_BFLOAT16[key]


def target_dtype(precision: TargetPrecision, device: th.device, sampled: bool = True) -> th.dtype:
    """
    :param precision: The user's ``target_precision``
    :param device: Where the networks live
    :param sampled: Whether the model scores sampled actions (``Box`` actions); a categorical critic scores every
        action in one small pass, which ``"auto"`` leaves in float32
    :return: The type of the hidden layers' matrix products in the target pass: ``"auto"`` resolved for the device
    """
    if precision == "auto":
        return th.bfloat16 if sampled and has_bfloat16_units(device) else th.float32
    return getattr(th, precision)


def dtype_name(dtype: th.dtype) -> str:
    """:return: The type's name as ``target_precision`` spells it (``"bfloat16"`` for ``torch.bfloat16``)"""
    return str(dtype).removeprefix("torch.")
