"""The seed's model names: ``<name>-<taskid>``, one rule for the gateway and the protocols.

58.com's ``dl_inference`` clients name a model by a task id: the last ``-`` field of the
model name (``textcnn-69``), or the bare number (``69``) where a Seldon tag carries it.
"""

from __future__ import annotations

import re

_TASK_ID = re.compile(r"[0-9]+")


def task_id_of(model: str) -> int | None:
    """The seed's task id in a model name: its last ``-`` field when that is a positive
    whole number (``textcnn-69`` -> 69, ``69`` -> 69), else None."""
    last = model.rpartition("-")[2]
    if not _TASK_ID.fullmatch(last) or int(last) == 0:
        return None
    return int(last)


def without_task_id(model: str) -> str:
    """``model`` without the seed's ``-<taskid>`` suffix (``textcnn-69`` -> ``textcnn``);
    a name with no such suffix (or only a number) as it is."""
    base, sep, _ = model.rpartition("-")
    return base if sep and base and task_id_of(model) is not None else model
