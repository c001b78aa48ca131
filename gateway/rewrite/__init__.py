"""MaskPlan + SQL -> masked SQL (pure). See ``gateway.rewrite.masker``."""
from gateway.rewrite.masker import RewriteError, RewriteResult, mask_statement, pseudonym_available, rewrite
from gateway.rewrite.pseudonym import install_statements

__all__ = ["RewriteError", "RewriteResult", "mask_statement", "rewrite", "install_statements",
           "pseudonym_available"]
