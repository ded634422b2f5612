"""Every loss of the package in one table: ``cxr_keras.losses.get(name, **kwargs)``.

Names are ``family/name``: ``multilabel/`` (logits, NaN targets ignored: ``bce``, ``focal``,
``zlpr``, ``fzlpr``, ``bfl``), ``segmentation/`` (sigmoid probabilities of lung masks: ``bce``,
``bce_dice``, ``focal``, ``tversky``, ``focal_tversky``) and ``multiclass/`` (softmax
probabilities: the multi-loss paper's 12 losses, ``cce`` ... ``cal_hinge``). A bare name works
where one family has it (``get("fzlpr", tau=0.2)``, ``get("cal_cce")``); ``bce`` and ``focal``
need their family. Keyword arguments go to the loss (for ``multiclass/`` the paper's options of
:func:`~cxr_keras.losses.calibrated.get_classification_loss`; ``cce_entropy``'s entropy term is an
output regulariser, which that function's ``build()`` returns beside the loss).
"""

from __future__ import annotations

from .biased_focal import BiasedFocalLoss
from .calibrated import CLASSIFICATION_LOSS_NAMES, get_classification_loss
from .ranking import MULTILABEL_LOSSES
from .segmentation import SEGMENTATION_LOSSES


def _multiclass(name):
    def make(**options):
        return get_classification_loss(name, **options).make_loss()
    return make


#: ``"family/name"`` -> a function of keyword options returning a fresh ``keras.losses.Loss``.
LOSSES = {
    **{f"multilabel/{n}": f for n, f in MULTILABEL_LOSSES.items()},
    "multilabel/bfl": BiasedFocalLoss,
    **{f"segmentation/{n}": f for n, f in SEGMENTATION_LOSSES.items()},
    **{f"multiclass/{n}": _multiclass(n) for n in CLASSIFICATION_LOSS_NAMES},
}


def names(family: str | None = None) -> tuple:
    """Every registered ``family/name`` (of one family when given)."""
    return tuple(k for k in LOSSES if family is None or k.startswith(family + "/"))


def resolve(name: str) -> str:
    """The registered ``family/name`` that ``name`` means; an error lists the choices."""
    key = str(name).lower()
    if key in LOSSES:
        return key
    matches = [k for k in LOSSES if k.split("/", 1)[1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise ValueError(f"loss {name!r} is ambiguous: say {' or '.join(map(repr, matches))}")
    raise ValueError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")


def get(name: str, **kwargs):
    """A fresh loss by name (see the module docstring), keyword arguments forwarded."""
    return LOSSES[resolve(name)](**kwargs)
