from .build_dataset import *
from .build_model import *
