"""Lightning plugins for data-centric and continual training of vision-language models.

Subpackages: ``functional`` (formulas), ``losses``, ``metrics``, ``models``,
``sampling`` (plain PyTorch), ``modules``, ``datamodules``, ``callbacks`` (Lightning).
Import them directly; this package imports nothing heavy on its own.
"""

__version__ = "0.1.0"
