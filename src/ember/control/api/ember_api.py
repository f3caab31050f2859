"""The `Ember` service, called by the SDK and the CLI: decode, call the parts, encode.

One servicer, made of one part per noun (each in its module): apps, calls, blobs, the cluster's
status, images.
"""

from __future__ import annotations

from ember.control.api.apps_api import AppsApi
from ember.control.api.blobs_api import BlobsApi
from ember.control.api.calls_api import CallsApi
from ember.control.api.cluster_api import ClusterApi
from ember.control.api.images_api import ImagesApi
from ember.proto import api_pb2_grpc


class EmberService(AppsApi, CallsApi, BlobsApi, ClusterApi, ImagesApi, api_pb2_grpc.EmberServicer):
    pass
