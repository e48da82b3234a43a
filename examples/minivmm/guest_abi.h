/*
 * The contract between the minivmm guest (guest.S) and its VMM: where
 * things live in guest-physical memory and how the guest asks its VMM for
 * page-state changes. Included by guest.S (through the C preprocessor) and
 * by the VMM, so it holds #defines only.
 *
 * Guest-physical layout (flat 32-bit protected mode, no paging):
 *   0x00000  boot parameters (the VMM writes them before the first entry)
 *   0x01000  guest code
 *   0x10000  request page, shared, as an SEV-SNP GHCB
 *   0x20000  run buffer, shared: the VMM's answer to a state query
 *   0x80000  top of the stack
 *   0x100000 the guest's own record: one 32-bit word per 4 KiB page
 *   CONV_BASE .. RAM end: the pages the guest converts (initially
 *            discarded: not yet accepted)
 * Pages below CONV_BASE are private, but the request page and the run
 * buffer, which are shared from the start.
 */
#ifndef MINIVMM_GUEST_ABI_H_
#define MINIVMM_GUEST_ABI_H_

#define GUEST_PAGE 4096
#define GUEST_PARAMS 0x0
#define GUEST_CODE 0x1000
#define GUEST_CODE_MAX 0xf000
#define GUEST_REQ 0x10000
#define GUEST_RUNS 0x20000
#define GUEST_RUNS_END 0x40000
#define GUEST_STACK_TOP 0x80000
#define GUEST_RECORD 0x100000

/* Boot parameters, 32-bit words at GUEST_PARAMS + offset. */
#define P_MAGIC 0
#define P_SEED 4
#define P_OPS 8        /* conversions to make */
#define P_PAGES 12     /* guest RAM in 4 KiB pages */
#define P_CONV_BASE 16 /* first page the guest converts */
#define P_FLAGS 20
#define P_CALIBRATE 24          /* empty requests to make first (timing) */
#define PARAMS_MAGIC 0x4d564d43 /* "CMVM" */
#define FLAG_HYPERCALL 1        /* shared/private through KVM_HC_MAP_GPA_RANGE */
#define FLAG_VMMCALL 2          /* ... with vmmcall (AMD) rather than vmcall */

/* The record: page state in the low 2 bits (0 shared, 1 private,
 * 2 discarded, as cvmstate_page_state), in the rest the number of the
 * conversion that last gave the page its content (0: never converted). A
 * page the guest owns holds (pfn, stamp) in its first 8 bytes and ~stamp
 * in its last 4. */
#define REC_STATE_MASK 3
#define REC_STAMP_SHIFT 2

/* Ports, written with `out` (the value is ignored). */
#define PORT_PSC 0x510    /* page-state change request in GUEST_REQ */
#define PORT_QUERY 0x511  /* state query, answer in GUEST_RUNS */
#define PORT_REPORT 0x512 /* the guest's verdict */
#define PORT_NOP 0x513    /* an empty request: exit round-trip timing */
#define PORT_PHASE 0x514  /* the guest's phase changes (value in eax) */

/* Page-state change request, as the GHCB PSC: header then entries. The
 * VMM sets REQ_STATUS (0, or a negative errno) and REQ_DONE (entries done,
 * in order: it stops at the first failure). */
#define REQ_COUNT 0
#define REQ_STATUS 4
#define REQ_DONE 8
#define REQ_ENTRIES 16
#define REQ_ENTRY_SIZE 16 /* u32 first pfn, u32 pages, u32 state, u32 0 */
#define REQ_MAX_ENTRIES 250

/* State query: the guest sets Q_START (pfn); the VMM writes the maximal
 * runs from there into GUEST_RUNS (u32 pfn, u32 pages, u32 state, u32 0;
 * at most RUNS_MAX) with their count in Q_COUNT and the pfn after the last
 * in Q_NEXT (the page count when none are left). The first run is clipped
 * to start at Q_START. */
#define Q_START 0
#define Q_COUNT 4
#define Q_NEXT 8
#define RUNS_MAX ((GUEST_RUNS_END - GUEST_RUNS) / 16)

/* The verdict, words at GUEST_REQ + offset. */
#define V_OK 0
#define V_PAGES 4           /* pages whose state was checked */
#define V_RUNS 8            /* runs the VMM reported */
#define V_CONVERSIONS 12    /* conversions made */
#define V_STATE_BAD 16      /* pages whose state differs */
#define V_CONTENT_BAD 20    /* owned pages whose content differs */
#define V_FIRST_PFN 24      /* the first page that differs */
#define V_EXPECTED 28       /* its expected state or word */
#define V_GOT 32            /* what was there */
#define V_KIND 36           /* 1 state, 2 content, 3 a refused conversion */
#define V_CONVERT_STATUS 40 /* the refused conversion's status */
#define V_CONTENT_PAGES 44  /* owned pages whose content was checked */

/* Phases told on PORT_PHASE. */
#define PHASE_CONVERTING 1
#define PHASE_VERIFYING 2

#endif /* MINIVMM_GUEST_ABI_H_ */
