"""The public Python API; its names are exported from :mod:`facerec` (``from facerec import
...``), which imports each module here when a name is first used.

- :class:`FaceRecognizer`: detect, embed, verify (1:1), and the way to galleries and video;
- :class:`Gallery`: enrolment through the enrolment policy, identification (1:N, open set);
- :class:`Watch`: faces tracked and named in a video, frame by frame;
- results: :class:`Verification`, :class:`Identification`, :class:`Enrolment`,
  :class:`RefusedPhoto` (frozen, with ``to_dict()``), besides the project's own
  :class:`~facerec.pipeline.Face`, :class:`~facerec.matching.Decision`,
  :class:`~facerec.video.FrameResult` and :class:`~facerec.video.TrackEvent`.

Failures raise :class:`~facerec.errors.FaceRecError` subclasses, each with a
machine-readable ``code`` (``no_face``, ``not_an_image``, ``truncated_image``, ...).

>>> from facerec import FaceRecognizer
>>> recognizer = FaceRecognizer()
>>> recognizer.verify(
...     "tests/data/lfw/Abel_Pacheco_0001.jpg", "tests/data/lfw/Abel_Pacheco_0004.jpg"
... ).match
True
"""

from facerec.api.gallery import Gallery as Gallery
from facerec.api.recognizer import FaceRecognizer as FaceRecognizer
from facerec.api.results import Enrolment as Enrolment
from facerec.api.results import Identification as Identification
from facerec.api.results import RefusedPhoto as RefusedPhoto
from facerec.api.results import Verification as Verification
from facerec.api.watch import Watch as Watch
