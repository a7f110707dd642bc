"""Teleprompters: one file per paper, all on the shared evaluation engine (``cuecard.engine.study``)."""

from .ape import APE, APEConfig
from .base import CompileReport, Teleprompter, TeleprompterConfig
from .bpo import BPO, BPOConfig
from .opro import OPRO, OPROConfig
from .pe2 import PE2, PE2Config
from .protegi import ProTeGi, ProTeGiConfig

__all__ = [
    "APE",
    "APEConfig",
    "BPO",
    "BPOConfig",
    "CompileReport",
    "OPRO",
    "OPROConfig",
    "PE2",
    "PE2Config",
    "ProTeGi",
    "ProTeGiConfig",
    "Teleprompter",
    "TeleprompterConfig",
]
