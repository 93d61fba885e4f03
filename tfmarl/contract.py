"""The serving contract every tfmarl export answers and `tfmarl serve` speaks.

Signature ``serving_default`` (method ``tensorflow/serving/predict``):

  input  ``history``:  tf.string  [batch, length]  item ids oldest first, right-padded with "".
  output ``item_ids``: tf.string  [batch, K]       best first.
  output ``scores``:   tf.float32 [batch, K]       non-increasing along each row: the slate's order
                                                   is the order of the scores.
  output ``values``:   tf.float32 [batch, K]       only where a policy's raw values differ from its
                                                   ranking key (the multi-agent export: the System
                                                   agent's critic values of the composed slate).

Items of a history are never recommended; unknown ids are ignored; a history with no known id gets
the cold-start slate. A version directory may carry TF Serving warm-up requests in
``assets.extra/tf_serving_warmup_requests`` (a TFRecord file of `PredictionLog` protos, at most
`MAX_WARMUP_RECORDS`), replayed after loading and before serving.

`tfmarl.export` writes these names and `tfmarl.serving` reads them; both import them from here. No
TensorFlow import: the REST request parser uses this module without loading TensorFlow.
"""

SIGNATURE_KEY = "serving_default"
PREDICT_METHOD_NAME = "tensorflow/serving/predict"
INPUT_NAME = "history"
OUTPUT_ITEM_IDS = "item_ids"
OUTPUT_SCORES = "scores"
OUTPUT_VALUES = "values"  # optional
OUTPUT_NAMES = (OUTPUT_ITEM_IDS, OUTPUT_SCORES)  # in every export
PAD_ID = ""  # right-padding of `history`; never an item id

EXTRA_DIR = "assets.extra"  # TF Serving's folder for files beside the SavedModel
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving replays no more than this many
