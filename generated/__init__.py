"""Standalone training scripts written by `snncompile codegen`."""
