"""SLoRA gating: CountSketch/TensorSketch, Frequent Directions and the head-gradient novelty gate."""

from .frequent_directions import FrequentDirections
from .gate import HeadGradientGate
from .sketch import CountSketch, TensorSketch

__all__ = ["CountSketch", "FrequentDirections", "HeadGradientGate", "TensorSketch"]
