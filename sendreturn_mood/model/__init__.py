"""The model: the contract between training and runtime (an ONNX file that describes itself) and the inference
worker that batches every room's windows into one model call.

May import `audio` (the front end the model file describes) and the package's base modules; never rooms, brokers,
outputs or the server.
"""
