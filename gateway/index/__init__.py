"""The search index: protected face vectors in Milvus (:mod:`.milvus`), and the live
collections of one deployment with their protection keys (:mod:`.manager`)."""
