"""The parts the explorer's pages share; the pages themselves are ``app/views/``, the entry point ``app/main.py``.

* ``state``: cached resources: the model catalogue, loaded models, traces, attributions, shared results;
* ``dataset_tools``: datasets for the Dataset page (configured or uploaded), masks over them in cached chunks,
  and the hand-over of a picked image to the sidebar;
* ``components``: the sidebar (model, image, stage and module, colours) and the widgets and panels pages draw;
* ``faithful_panels``: the deletion / insertion and randomisation panels over :mod:`resattn.faithfulness`.

Each module imports only those listed before it, and none imports a page. Pages import them as
``from ui import components, state`` (``app/main.py`` puts ``app/`` on ``sys.path``).
"""
