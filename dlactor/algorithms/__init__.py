"""Round protocols: what every process of a run does in a round (``[algorithm]``).

D-PSGD (``dpsgd.py``, the default), FedAvg (``fedavg.py``), a synchronous parameter server
(``parameter_server.py``) and Epidemic Learning (``epidemic.py``); their settings are in
``settings.py``, registered as plugins are. ``base.py`` has the interface a plugin implements.
"""
