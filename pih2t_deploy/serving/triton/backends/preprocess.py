"""Triton Python-backend model: encoded image bytes (BYTES) -> the model's input tensor.

It uses pih2t_deploy's own decoding and preprocessing (the same code as the REST service), configured by
the ``preprocessing`` and ``pixel_input`` parameters of its config.pbtxt. An image that cannot be used gets
an error response for its request; the model and the server keep running.
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils

from pih2t_deploy.data.images import open_image
from pih2t_deploy.data.preprocessing import Preprocessing
from pih2t_deploy.errors import DataError


class TritonPythonModel:
    """Decode and preprocess each image of each request."""

    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.prep = Preprocessing.from_dict(json.loads(parameters["preprocessing"]["string_value"]))
        self.pixel_input = parameters["pixel_input"]["string_value"] == "true"

    def _tensor(self, blobs):
        images = [open_image(bytes(blob), name=f"image {index}") for index, blob in enumerate(blobs)]
        return self.prep.to_pixels(images) if self.pixel_input else self.prep.to_numpy(images)

    def execute(self, requests):
        responses = []
        for request in requests:
            blobs = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            try:
                output = pb_utils.Tensor("input", np.ascontiguousarray(self._tensor(blobs)))
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
            except DataError as exc:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        return responses
