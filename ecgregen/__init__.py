"""ecgregen: ECG report generation and question answering by retrieval (ECG-ReGen as a service).

Data flow: ecg (checked input) -> preprocess -> encoder -> store (Qdrant) -> answer; `pipeline` strings them
together for the server (`ecgregen.server`), the indexer (`ecgregen.indexer`) and the evaluation.
"""

__version__ = "0.1.0"
