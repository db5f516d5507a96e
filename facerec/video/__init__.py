"""Real-time video: sources, tracking, identity per track, one shared pipeline.

``open_source(uri)`` reads a file, an RTSP or HTTP MJPEG stream or a camera in a thread
that keeps the newest frame; a :class:`StreamAnalyzer` per stream tracks faces and names
them by a weighted vote over their embeddings, running the networks through a shared
:class:`~facerec.batching.MicroBatcher` so the frames and crops of every stream are batched
together; :class:`VideoStream` runs one source through one analyzer.
"""

from facerec.video.analyzer import (
    EVENTS,
    FaceResult,
    FrameResult,
    StreamAnalyzer,
    TrackEvent,
    VideoConfig,
)
from facerec.video.identity import GalleryPolicy, IdentityVote, MatchPolicy, VoteConfig
from facerec.video.sources import (
    Frame,
    FrameSource,
    SourceError,
    SourceOptions,
    SourceStats,
    open_source,
)
from facerec.video.stream import StreamStats, VideoStream, open_stream
from facerec.video.tracker import Tracker, TrackerConfig

__all__ = [
    "EVENTS",
    "FaceResult",
    "Frame",
    "FrameResult",
    "FrameSource",
    "GalleryPolicy",
    "IdentityVote",
    "MatchPolicy",
    "SourceError",
    "SourceOptions",
    "SourceStats",
    "StreamAnalyzer",
    "StreamStats",
    "TrackEvent",
    "Tracker",
    "TrackerConfig",
    "VideoConfig",
    "VideoStream",
    "VoteConfig",
    "open_source",
    "open_stream",
]
