"""The study's arms: what each classifier of a cell trains on (one definition for the study, its
tables and its report).

Every arm of a cell trains on the same real subset with the same seed and is tested on the same
test set:

==============  ===========================================  =====================
arm             training data                                augmentation
==============  ===========================================  =====================
baseline        the real subset                              flips
classic         the real subset                              flips + stain (``--classic_augment``)
gan             real + the GAN's synthetic set               flips
gan_filtered    real + the synthetic patches the baseline    flips
                classifier agrees with (``generate
                --filter_classifier``)
gan+classic     real + the GAN's synthetic set               flips + stain
==============  ===========================================  =====================
"""
from __future__ import annotations

import dataclasses

from histaug_tf.common import UserError


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    synthetic: str | None   # None, "synthetic" or "synthetic_filtered": the cell's set it mixes in
    classic: bool           # stain augmentation (the study's --classic_augment) instead of flips

    @property
    def run_dir(self) -> str:
        """The classifier's directory in the cell (``clf_gan+classic`` → ``clf_gan_classic``)."""
        return "clf_" + self.name.replace("+", "_")


ARMS = {a.name: a for a in (
    Arm("baseline", None, False),
    Arm("classic", None, True),
    Arm("gan", "synthetic", False),
    Arm("gan_filtered", "synthetic_filtered", False),
    Arm("gan+classic", "synthetic", True),
)}
ORDER = tuple(ARMS)
COMPARED_WITH = ("baseline", "classic")   # every other arm is tested against these two


def parse_arms(names, what: str = "--arms") -> list:
    """Arm names (a list or comma string) in the canonical order; UserError for unknown ones."""
    if isinstance(names, str):
        names = names.split(",")
    names = [n.strip() for n in names if n and n.strip()]
    bad = [n for n in names if n not in ARMS]
    if bad:
        raise UserError(f"{what}: unknown arm {bad[0]!r} (expected any of {', '.join(ORDER)})")
    if not names:
        raise UserError(f"{what}: give at least one arm")
    return [a for a in ORDER if a in names]
