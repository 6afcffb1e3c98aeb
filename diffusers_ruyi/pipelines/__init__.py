from .controls import RuyiControlEmbeddings
from .pipeline_output import RuyiPipelineOutput
from .pipeline_ruyi_i2v import RuyiImageToVideoPipeline
