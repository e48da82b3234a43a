# Merges static archives into one with GNU ar's MRI script mode:
#   cmake -DOUTPUT=lib.a -DAR=ar -DINPUTS=a.a,b.a -P merge_archives.cmake
string(REPLACE "," ";" INPUTS "${INPUTS}")
set(script "create ${OUTPUT}\n")
foreach(lib ${INPUTS})
  string(APPEND script "addlib ${lib}\n")
endforeach()
string(APPEND script "save\nend\n")
file(WRITE "${OUTPUT}.mri" "${script}")
file(REMOVE "${OUTPUT}")
execute_process(COMMAND "${AR}" -M INPUT_FILE "${OUTPUT}.mri" RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "merging archives into ${OUTPUT} failed")
endif()
