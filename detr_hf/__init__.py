"""detr_hf: fine-tune DETR-family object detectors on your own data, the Hugging Face way.

Importing the package registers its config, model and image processor with transformers' Auto classes, so
`AutoModelForObjectDetection`, `AutoImageProcessor` and `pipeline("object-detection")` load detr_hf folders;
`pipeline("sliced-object-detection")` runs any of them (or transformers' DETR family) on large images by tiles.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForObjectDetection

from .configuration_deformable import DeformableDetrConfig
from .configuration_detr import DetrConfig
from .image_processing_detr import DetrHfImageProcessor, DetrImageProcessor
from .inference.pipeline import SlicedObjectDetectionPipeline, register_sliced_pipeline
from .inference.sliced import SlicedDetector, sliced_detection
from .logging_utils import dropped_logs
from .modeling_deformable import DeformableDetrForObjectDetection, DeformableDetrModel, DeformableDetrModelOutput
from .modeling_detr import (
    DetrForObjectDetection,
    DetrModel,
    DetrModelOutput,
    DetrObjectDetectionOutput,
    DetrPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(DetrConfig.model_type, DetrConfig, exist_ok=True)
AutoModel.register(DetrConfig, DetrModel, exist_ok=True)
AutoModelForObjectDetection.register(DetrConfig, DetrForObjectDetection, exist_ok=True)
AutoConfig.register(DeformableDetrConfig.model_type, DeformableDetrConfig, exist_ok=True)
AutoModel.register(DeformableDetrConfig, DeformableDetrModel, exist_ok=True)
AutoModelForObjectDetection.register(DeformableDetrConfig, DeformableDetrForObjectDetection, exist_ok=True)
# Registering makes transformers resolve its own processors, which warns about torchvision on every import.
with dropped_logs("transformers.utils.import_utils", lambda record: "torchvision" in str(record.msg)):
    for config_class in (DetrConfig, DeformableDetrConfig):
        AutoImageProcessor.register(
            config_class,
            image_processor_classes={"pil": DetrHfImageProcessor, "torchvision": DetrHfImageProcessor},
            exist_ok=True,
        )
register_sliced_pipeline()

__all__ = [
    "DeformableDetrConfig",
    "DeformableDetrForObjectDetection",
    "DeformableDetrModel",
    "DeformableDetrModelOutput",
    "DetrConfig",
    "DetrForObjectDetection",
    "DetrHfImageProcessor",
    "DetrImageProcessor",
    "DetrModel",
    "DetrModelOutput",
    "DetrObjectDetectionOutput",
    "DetrPreTrainedModel",
    "SlicedDetector",
    "SlicedObjectDetectionPipeline",
    "sliced_detection",
]
