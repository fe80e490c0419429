"""Checkpoints with orbax: atomic (written to a temporary folder, then renamed), periodic and final.

A run restarted in the same workdir resumes from the latest complete checkpoint; a save cut short by
SIGKILL leaves only a temporary folder, which orbax ignores and we delete on start.
"""
from __future__ import annotations

import os

import flax
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False,
                                             cleanup_tmp_directories=True, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state) -> None:
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(state)))
    self.manager.wait_until_finished()

  def restore(self, template, step: int | None = None):
    """Restores into the structure, shapes, dtypes and shardings of `template` (a live or abstract state)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
        flax.serialization.to_state_dict(template))
    restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return flax.serialization.from_state_dict(template, restored)

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def close(self):
    self.manager.close()
