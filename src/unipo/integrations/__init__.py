"""Integrations with other training libraries, each an optional import (``unipo`` itself imports none of
them): :mod:`unipo.integrations.trl` makes TRL's ``DPOTrainer`` train with any unipo objective."""
