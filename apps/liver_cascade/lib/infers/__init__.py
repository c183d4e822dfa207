from lib.infers.liver import InvalidRequestError, LiverSegmentation
