"""Layer 4 (methods): editing methods behind one signature and the registry the harness finds them in
(:mod:`.registry`, which imports none of them). The MEND editor (:mod:`.mend`, its networks in :mod:`.networks`),
KE (:mod:`.ke`), and the methods that optimise every edit — FT-L (:mod:`.ft`), CaliNet (:mod:`.calinet`) and GRACE
(:mod:`.grace`), sharing :mod:`.edit_loop` — and the locate-then-edit methods ROME, MEMIT and AlphaEdit (:mod:`.rome`,
with :mod:`.locate` and :mod:`.closed_form`) register themselves; importing this package face loads them all."""
from . import calinet, ft, grace, ke, mend, rome  # noqa: F401  (each registers its method)
from .mend import EDITOR_META, EditResult, MendEditor, TrainedEditor, editor_class, make_editor
from .registry import CONFIGS, REGISTRY, EditingMethod, Unedited, build, config_digest, register

__all__ = ["EDITOR_META", "EditResult", "MendEditor", "TrainedEditor", "editor_class", "make_editor", "CONFIGS",
           "REGISTRY", "EditingMethod", "Unedited", "build", "config_digest", "register"]
