from .lora import RuyiLoraLoaderMixin
