# formica_add_proto(TARGET target PROTOS a.proto... IMPORT_DIRS dir... [GRPC])
# Compiles protos with protoc (C++, and gRPC services with GRPC) into an
# object library named TARGET. Generated headers go under the build tree,
# mirroring the proto paths relative to the first import dir.
function(formica_add_proto)
  cmake_parse_arguments(ARG "GRPC" "TARGET" "PROTOS;IMPORT_DIRS" ${ARGN})
  add_library(${ARG_TARGET} OBJECT ${ARG_PROTOS})
  set(out "${CMAKE_CURRENT_BINARY_DIR}/gen")
  file(MAKE_DIRECTORY "${out}")
  target_include_directories(${ARG_TARGET} PUBLIC "$<BUILD_INTERFACE:${out}>")
  target_link_libraries(${ARG_TARGET} PUBLIC protobuf::libprotobuf gRPC::grpc++)
  # Generated code is not ours to keep warning-free.
  target_compile_options(${ARG_TARGET} PRIVATE -w)
  protobuf_generate(TARGET ${ARG_TARGET} LANGUAGE cpp
    IMPORT_DIRS ${ARG_IMPORT_DIRS} PROTOC_OUT_DIR "${out}")
  if(ARG_GRPC)
    get_target_property(grpc_plugin gRPC::grpc_cpp_plugin LOCATION)
    protobuf_generate(TARGET ${ARG_TARGET} LANGUAGE grpc
      GENERATE_EXTENSIONS .grpc.pb.h .grpc.pb.cc
      PLUGIN "protoc-gen-grpc=${grpc_plugin}"
      IMPORT_DIRS ${ARG_IMPORT_DIRS} PROTOC_OUT_DIR "${out}")
  endif()
endfunction()
