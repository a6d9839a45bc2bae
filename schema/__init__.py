"""The JSON Schema files of protocol v1 and the AsyncAPI document (data only).

Installed as the package `sendreturn_mood.schema` (see pyproject.toml), so `sendreturn_mood.contract` finds the
same files in a checkout, an editable install and a wheel.
"""
