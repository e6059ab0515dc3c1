"""The ECG encoder and the runtimes that serve it. Import from the modules; each has one job:

- ``model``: the architecture (``EncoderConfig``, ``EcgEncoder`` with its padding mask), ``EncoderBundle``, ids;
- ``checkpoint``: the serving checkpoint file (format version), the shipped checkpoints, ``load_encoder``;
- ``base``: the ``Encoder`` protocol every runtime meets (failing with ``ecgregen.errors.EncoderUnavailable``), and
  ``embed_prepared``, the one way preprocessed ECGs become vectors (windows in, one pooled vector per ECG out);
- ``pytorch``: the batching runtime shared by in-process encoders, and eager PyTorch;
- ``onnxrt``: the ONNX export and onnxruntime (the served CPU default);
- ``triton`` / ``fallback``: NVIDIA Triton, and Triton with the in-process model while Triton is down;
- ``factory``: which of these serves, from the command line.
"""
