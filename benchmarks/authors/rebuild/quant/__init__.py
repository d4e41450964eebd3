from .quant_model import *
from .quant_modules import *
from .quantizer import *
