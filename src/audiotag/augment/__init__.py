from .spec import Gain, Mixup, SpecAugment, TimeShift, build_transforms

__all__ = ["Gain", "Mixup", "SpecAugment", "TimeShift", "build_transforms"]
