"""Thin command programs: parse arguments, call library functions, print. A command never imports another command.

The top layer: may import anything in the package.
"""
