"""An example omnimm plugin: a small CNN image encoder registered as `thirdparty/tiny-cnn`."""
