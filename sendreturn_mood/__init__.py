"""sendreturn-mood: real-time music mood analysis for SEND/RETURN rooms.

The package in layers; a module imports only from its own layer's package and from the layers below it, never from
a sibling on its own rung (tests/test_layers.py reads every import and fails on an upward import or a circle):

    __main__                 python -m sendreturn_mood: the shim that calls cli
    cli                      thin commands: parse arguments, call a library function, print
    bench  hostile           tools: benchmarks, the hostile-client suite
    server  client           the websocket/HTTP server (I/O shell) | the public asyncio client
    outputs                  sinks for a room's updates besides its websocket members (OSC ...)
    broker                   a room across processes: in memory, Redis; prepared-track stores
    room                     sans-I/O: tracker, smoothing, track changes, effects, rooms, the session, offline analysis
    model                    the model contract (ONNX file that describes itself), the inference worker
    audio                    PCM, resampling, the log-mel front end, levels, the streaming pipeline, audio files
    base modules             errors (SendReturnError), config (typed settings), protocol (wire messages, sans-I/O),
                             metrics, contract (the protocol's JSON Schemas), shipped (where the models and schemas are);
                             static/ (the browser page, data)

The base modules import nothing above them: `protocol` holds the wire's facts (encodings, rates, codes) and `audio`
builds on them; `config` holds each setting's type and allowed values, and the layers above read attributes of it.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
