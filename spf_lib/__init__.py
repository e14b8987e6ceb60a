"""spf-portrait: customize text-to-image portrait models without semantic pollution.

The library never imports kfp; KFP components in ``components/`` are thin wrappers around it.
"""

__version__ = "0.1.0"
