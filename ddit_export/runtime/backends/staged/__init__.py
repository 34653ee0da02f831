"""Backends for staged folders: embed and head per size, one shared trunk (`calls.StagedCalls` runs them).

One module per runtime, named as the single-layout ones in the folder above.
"""
