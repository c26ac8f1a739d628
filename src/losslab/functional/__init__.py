"""Pure functions, one family per module; every public name is re-exported here.

A family that outgrows one file (~800 lines) is split into ``<family>_<topic>.py``.
"""
from __future__ import annotations

from . import calibration as _calibration
from . import classification as _classification
from . import classification_compsum as _classification_compsum
from . import classification_ldr as _classification_ldr
from . import classification_surrogates as _classification_surrogates
from . import contrastive as _contrastive
from . import contrastive_multihead as _contrastive_multihead
from . import contrastive_robust as _contrastive_robust
from . import distillation as _distillation
from . import distillation_stateful as _distillation_stateful
from . import divergences as _divergences
from . import divergences_f as _divergences_f
from . import information as _information
from . import large_vocab as _large_vocab
from . import large_vocab_divergences as _large_vocab_divergences
from . import large_vocab_sequence as _large_vocab_sequence
from . import large_vocab_token as _large_vocab_token
from . import metric as _metric
from . import metric_fewshot as _metric_fewshot
from . import metric_triplet as _metric_triplet
from . import policy_gradient as _policy_gradient
from . import preference as _preference
from . import ranking as _ranking
from . import regression as _regression
from . import transport as _transport
from . import transport_flow as _transport_flow
from . import transport_kernel as _transport_kernel
from .calibration import *  # noqa: F401,F403
from .classification import *  # noqa: F401,F403
from .classification_compsum import *  # noqa: F401,F403
from .classification_ldr import *  # noqa: F401,F403
from .classification_surrogates import *  # noqa: F401,F403
from .contrastive import *  # noqa: F401,F403
from .contrastive_multihead import *  # noqa: F401,F403
from .contrastive_robust import *  # noqa: F401,F403
from .distillation import *  # noqa: F401,F403
from .distillation_stateful import *  # noqa: F401,F403
from .divergences import *  # noqa: F401,F403
from .divergences_f import *  # noqa: F401,F403
from .information import *  # noqa: F401,F403
from .large_vocab import *  # noqa: F401,F403
from .large_vocab_divergences import *  # noqa: F401,F403
from .large_vocab_sequence import *  # noqa: F401,F403
from .large_vocab_token import *  # noqa: F401,F403
from .metric import *  # noqa: F401,F403
from .metric_fewshot import *  # noqa: F401,F403
from .metric_triplet import *  # noqa: F401,F403
from .policy_gradient import *  # noqa: F401,F403
from .preference import *  # noqa: F401,F403
from .ranking import *  # noqa: F401,F403
from .regression import *  # noqa: F401,F403
from .transport import *  # noqa: F401,F403
from .transport_flow import *  # noqa: F401,F403
from .transport_kernel import *  # noqa: F401,F403

__all__: list[str] = [
    *_classification.__all__,
    *_classification_compsum.__all__,
    *_classification_ldr.__all__,
    *_classification_surrogates.__all__,
    *_divergences.__all__,
    *_divergences_f.__all__,
    *_transport.__all__,
    *_transport_kernel.__all__,
    *_transport_flow.__all__,
    *_information.__all__,
    *_contrastive.__all__,
    *_contrastive_robust.__all__,
    *_contrastive_multihead.__all__,
    *_metric.__all__,
    *_metric_triplet.__all__,
    *_metric_fewshot.__all__,
    *_ranking.__all__,
    *_large_vocab.__all__,
    *_large_vocab_divergences.__all__,
    *_large_vocab_sequence.__all__,
    *_distillation.__all__,
    *_distillation_stateful.__all__,
    *_large_vocab_token.__all__,
    *_policy_gradient.__all__,
    *_preference.__all__,
    *_calibration.__all__,
    *_regression.__all__,
]
