"""The application layer: the library behind entry point ``histaug_tf/NAME.py`` is ``histaug_tf/apps/NAME.py``.
It wires the lower layers (data, gan, interop, metrics, classifier) together; nothing below imports it.
``report.py`` has no entry point: it is the experiment app's report writer.
"""
