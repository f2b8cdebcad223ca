"""Config options this plug-in adds (hydra.searchpath=[pkg://pow2_batcher.conf])."""
