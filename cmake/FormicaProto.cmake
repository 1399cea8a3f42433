# formica_add_proto(TARGET target PROTOS a.proto... [IMPORT_DIRS dir...] [GRPC])
# Compiles protos with protoc (C++ messages, and gRPC services with GRPC)
# into an object library named TARGET; link it to use the generated code.
# IMPORT_DIRS (default: the calling directory) are the roots protos are
# imported from; a proto's generated files are named by its path relative to
# the calling directory, which must therefore be its import root, and go
# under the build tree: "acme/v1/hello.proto" gives "acme/v1/hello.pb.h".
#
# Installed with the Formica package (find_package(Formica)): Formica's own
# protos ("formica/<module>/v1/<module>.proto") can be imported too, and the
# target links Formica::client, which holds their generated code.
function(formica_add_proto)
  cmake_parse_arguments(ARG "GRPC" "TARGET" "PROTOS;IMPORT_DIRS" ${ARGN})
  if(NOT ARG_TARGET OR NOT ARG_PROTOS)
    message(FATAL_ERROR "formica_add_proto needs TARGET name and PROTOS files")
  endif()
  if(NOT ARG_IMPORT_DIRS)
    set(ARG_IMPORT_DIRS "${CMAKE_CURRENT_SOURCE_DIR}")
  endif()
  add_library(${ARG_TARGET} OBJECT ${ARG_PROTOS})
  set(out "${CMAKE_CURRENT_BINARY_DIR}/gen")
  file(MAKE_DIRECTORY "${out}")
  target_include_directories(${ARG_TARGET} PUBLIC "$<BUILD_INTERFACE:${out}>")
  target_link_libraries(${ARG_TARGET} PUBLIC protobuf::libprotobuf gRPC::grpc++)
  if(FORMICA_PROTO_DIR)
    list(APPEND ARG_IMPORT_DIRS "${FORMICA_PROTO_DIR}")
    target_link_libraries(${ARG_TARGET} PUBLIC Formica::client)
  endif()
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
